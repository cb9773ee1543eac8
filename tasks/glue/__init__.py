"""GLUE processors (official TSV files) and cloze patterns."""
