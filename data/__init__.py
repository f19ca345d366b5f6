"""The bundled labeled corpus, shipped inside labelwise as package data."""
