"""Free and closed TCP ports on 127.0.0.1."""

import socket


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago.

    Another process may take the port before the caller binds it, which is
    unlikely among the high ports the kernel hands out.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
