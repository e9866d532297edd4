"""Plugins that ship with sapo-core, registered after the installed entry points."""
