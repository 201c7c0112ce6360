"""CLI for the model layer: not yet."""


def register(commands, benches):
    pass
