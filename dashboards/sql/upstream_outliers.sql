-- Upstream instances slower than their siblings: each instance's p90 upstream time against its app's.
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    app,
    upstream,
    requests,
    round(toFloat64(p90_us) / 1000, 2) AS p90_ms,
    round(toFloat64(app_p90_us) / 1000, 2) AS app_p90_ms,
    round(toFloat64(p90_us) / greatest(toFloat64(app_p90_us), 1), 2) AS ratio
FROM
(
    SELECT app, upstream, count() AS requests, quantile(0.9)(upstream_total_us) AS p90_us
    FROM {db}.requests
    WHERE time >= now() - {since} AND upstream != '' {app_filter}
    GROUP BY app, upstream
)
ANY LEFT JOIN
(
    SELECT app, quantile(0.9)(upstream_total_us) AS app_p90_us
    FROM {db}.requests
    WHERE time >= now() - {since} AND upstream != '' {app_filter}
    GROUP BY app
) USING app
ORDER BY ratio DESC, requests DESC
LIMIT {limit}
