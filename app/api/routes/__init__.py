"""Routers, one module per resource; ``app.main.ROUTERS`` lists what is mounted."""
