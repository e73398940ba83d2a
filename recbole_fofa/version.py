"""The plugin's version: a leaf, so that stored results can name it without importing the
package."""

__version__ = "0.1.0"
