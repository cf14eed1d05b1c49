"""``eventworker dashboard``: the HTTP server, the page it renders and the chart on it."""
