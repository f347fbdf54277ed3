"""Pure data shapes: Codat's webhook bodies, our internal events, the state machine, the tables.

Imports only the standard library, pydantic and sqlmodel.
"""
