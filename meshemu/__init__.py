"""meshemu: emulate GPU satellite meshes.

The package follows the data flow, each layer using only the ones before it::

    constellation -> links -> routing -> emulation -> serving -> experiments -> cli
"""

__version__ = "0.1.0"
