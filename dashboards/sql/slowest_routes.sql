-- Slowest routes by p99 total latency.
-- Params: {db} database, {since} seconds back, {app_filter} optional app condition, {limit} rows.
SELECT
    app,
    route,
    count() AS requests,
    round(toFloat64(quantile(0.5)(total_us)) / 1000, 2) AS p50_ms,
    round(toFloat64(quantile(0.99)(total_us)) / 1000, 2) AS p99_ms,
    round(toFloat64(max(total_us)) / 1000, 2) AS max_ms
FROM {db}.requests
WHERE time >= now() - {since} {app_filter}
GROUP BY app, route
ORDER BY p99_ms DESC, requests DESC
LIMIT {limit}
