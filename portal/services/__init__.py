"""Business rules, called by the blueprints; nothing here reads the request."""
