"""Human-facing views of a run: live progress and the closing summary."""
