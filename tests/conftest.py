pytest_plugins = ["election2.testing.pytest_plugin"]
