"""Mail protocol clients, one module per protocol.

Transports know nothing of Flask. Each turns its protocol's errors into a
``TransportError`` carrying the step that failed and what to do about it.
"""
