-- Breaker changes: when each route's circuit breaker opened or closed, on which gateway instance, and why (newest first).
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    time,
    instance,
    app,
    route,
    from_state,
    to_state,
    reason,
    policy_version
FROM {db}.fence_events
WHERE time >= now() - {since} {app_filter}
ORDER BY time_us DESC
LIMIT {limit}
