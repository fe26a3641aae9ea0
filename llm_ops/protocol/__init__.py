"""Wire formats. Imports nothing but pydantic, the standard library and FastChat's constants."""
