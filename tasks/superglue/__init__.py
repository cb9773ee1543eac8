"""SuperGLUE processors and PET patterns (spec 8.2)."""
