"""Exporters: thin views over live state. Import a submodule explicitly; nothing loads eagerly."""
