"""The automation engine: tactics (validated definitions), durable runs, the worker."""
