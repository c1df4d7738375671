"""xtf's Hydra sweeper (see xtf_sweeper.py). `hydra_plugins` itself has no __init__.py: it is a namespace
package shared with Hydra's other plugins (Hydra only loads plugins from it)."""
