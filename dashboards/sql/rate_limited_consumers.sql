-- Consumers refused most by rate limits and quotas, and by which limit.
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    if(consumer = '', concat('anonymous ', client_ip), consumer) AS caller,
    rejected_by,
    count() AS refused
FROM {db}.requests
WHERE time >= now() - {since} AND outcome = 'rate_limited' {app_filter}
GROUP BY caller, rejected_by
ORDER BY refused DESC
LIMIT {limit}
