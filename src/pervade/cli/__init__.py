"""The `pervade` command line."""
