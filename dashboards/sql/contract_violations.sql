-- Contract violations by route and policy version (refused, and recorded in monitor mode).
-- Params: {db}, {since}, {app_filter}, {limit}.
SELECT
    app,
    route,
    policy_version,
    countIf(outcome = 'contract_violation') AS refused,
    countIf(request_verdict = 'invalid') AS invalid_requests,
    countIf(response_verdict = 'invalid' OR outcome = 'upstream_contract_violation') AS invalid_responses,
    any(violations) AS example
FROM {db}.requests
WHERE time >= now() - {since}
  AND (outcome IN ('contract_violation', 'upstream_contract_violation') OR request_verdict = 'invalid' OR response_verdict = 'invalid')
  {app_filter}
GROUP BY app, route, policy_version
ORDER BY refused + invalid_requests + invalid_responses DESC
LIMIT {limit}
