"""GLUE processors (official TSV files) and cloze patterns (spec 8.3)."""
