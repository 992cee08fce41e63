-- Error hotspots: routes and outcomes with the most failed requests (5xx or a non-ok outcome).
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    app,
    route,
    outcome,
    count() AS failures,
    min(status) AS min_status,
    max(status) AS max_status
FROM {db}.requests
WHERE time >= now() - {since} AND (status >= 500 OR outcome != 'ok') {app_filter}
GROUP BY app, route, outcome
ORDER BY failures DESC
LIMIT {limit}
