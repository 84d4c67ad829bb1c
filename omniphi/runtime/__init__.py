"""The bottom inference layer: loading a model for inference and the Assistant that answers with it.

Everything that answers (the CLI, the server, `omniphi eval`, the starter build) goes through this
package; it imports nothing above it (no cli, serve, train, eval or starter modules).
"""
