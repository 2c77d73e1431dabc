"""Rule books, one TOML file per rule year (package data)."""
