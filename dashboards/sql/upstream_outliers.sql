-- Upstream instances slower than their siblings: each instance's median upstream time against the route's, route by route.
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    app,
    route,
    upstream,
    requests,
    round(toFloat64(p50_us) / 1000, 2) AS p50_ms,
    round(toFloat64(route_p50_us) / 1000, 2) AS route_p50_ms,
    round(toFloat64(p50_us) / greatest(toFloat64(route_p50_us), 1), 2) AS ratio
FROM
(
    SELECT app, route, upstream, count() AS requests, quantile(0.5)(upstream_total_us) AS p50_us
    FROM {db}.requests
    WHERE time >= now() - {since} AND upstream != '' {app_filter}
    GROUP BY app, route, upstream
)
ANY LEFT JOIN
(
    SELECT app, route, quantile(0.5)(upstream_total_us) AS route_p50_us
    FROM {db}.requests
    WHERE time >= now() - {since} AND upstream != '' {app_filter}
    GROUP BY app, route
) USING (app, route)
ORDER BY ratio DESC, requests DESC
LIMIT {limit}
