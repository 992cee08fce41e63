-- Latency and errors before and after each policy version change.
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    policy_version,
    min(time) AS first_seen,
    max(time) AS last_seen,
    count() AS requests,
    round(toFloat64(quantile(0.5)(total_us)) / 1000, 2) AS p50_ms,
    round(toFloat64(quantile(0.99)(total_us)) / 1000, 2) AS p99_ms,
    round(100 * toFloat64(countIf(status >= 500 OR outcome != 'ok')) / count(), 2) AS error_pct
FROM {db}.requests
WHERE time >= now() - {since} {app_filter}
GROUP BY policy_version
ORDER BY first_seen
LIMIT {limit}
