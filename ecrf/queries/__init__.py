"""Data clarification queries: a monitor or data manager asks, the site answers, the query is closed."""
