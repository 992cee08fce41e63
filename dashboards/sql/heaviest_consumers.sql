-- Heaviest consumers: requests, bytes and time they cost.
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    if(consumer = '', 'anonymous', consumer) AS caller,
    count() AS requests,
    sum(bytes_in) AS bytes_in,
    sum(bytes_out) AS bytes_out,
    round(toFloat64(sum(total_us)) / 1000000, 3) AS total_seconds
FROM {db}.requests
WHERE time >= now() - {since} {app_filter}
GROUP BY caller
ORDER BY requests DESC
LIMIT {limit}
