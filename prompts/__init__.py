"""Prompt templates and the policy taxonomy, shipped inside labelwise as package data."""
