"""SuperGLUE processors and PET patterns."""
