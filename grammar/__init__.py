"""The modelspec grammar (modelspec.lark), shipped as package data."""
