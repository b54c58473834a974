"""Applications built on pervade's context reuse.

`apps.llm` holds batch functions that run on workers (they import only core and engines);
each application package adds the driver side: input validation, prompts and summaries.
"""
