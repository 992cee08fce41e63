-- Where the time goes per route: the gateway's own share versus waiting on the upstream.
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    app,
    route,
    count() AS requests,
    round(toFloat64(avg(total_us)) / 1000, 3) AS avg_total_ms,
    round(toFloat64(avg(gateway_us)) / 1000, 3) AS avg_gateway_ms,
    round(toFloat64(avg(upstream_total_us)) / 1000, 3) AS avg_upstream_ms,
    round(100 * toFloat64(sum(gateway_us)) / greatest(toFloat64(sum(total_us)), 1), 1) AS gateway_pct
FROM {db}.requests
WHERE time >= now() - {since} {app_filter}
GROUP BY app, route
ORDER BY gateway_pct DESC, requests DESC
LIMIT {limit}
