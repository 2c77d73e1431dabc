"""Helpers shared by test modules (imported as ``support.x``); test modules never import
one another. Nothing here starts a broker on import."""
