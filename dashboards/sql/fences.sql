-- Fenced apps: per app, how often its breakers opened from closed (the incidents) and how many requests the fences answered for it (shed at the cap, breaker open, retry budget spent, gateway overloaded).
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    app,
    sum(openings) AS breaker_openings,
    sum(shed) AS shed,
    sum(breaker_open) AS breaker_open,
    sum(retry_budget) AS retry_budget,
    sum(overloaded) AS overloaded,
    max(last_opened) AS last_opened
FROM
(
    SELECT
        app,
        count() AS openings,
        toUInt64(0) AS shed,
        toUInt64(0) AS breaker_open,
        toUInt64(0) AS retry_budget,
        toUInt64(0) AS overloaded,
        max(time) AS last_opened
    FROM {db}.fence_events
    WHERE time >= now() - {since} AND from_state = 'closed' AND to_state = 'open' {app_filter}
    GROUP BY app
    UNION ALL
    SELECT
        app,
        toUInt64(0) AS openings,
        countIf(outcome = 'shed') AS shed,
        countIf(outcome = 'breaker_open') AS breaker_open,
        countIf(outcome = 'retry_budget') AS retry_budget,
        countIf(outcome = 'overloaded') AS overloaded,
        toDateTime(0) AS last_opened
    FROM {db}.requests
    WHERE time >= now() - {since} AND outcome IN ('shed', 'breaker_open', 'retry_budget', 'overloaded') {app_filter}
    GROUP BY app
)
GROUP BY app
ORDER BY breaker_openings + shed + breaker_open + retry_budget + overloaded DESC
LIMIT {limit}
