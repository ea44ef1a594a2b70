MERGE INTO [cutover_shadow_evidence] WITH (HOLDLOCK) AS t
USING (SELECT j.[entity], j.[client_id], j.[stage], j.[bucket_start], j.[comparisons], j.[mismatches], j.[mismatched_items], j.[errors], CAST(? AS DATETIME2(6)) AS [updated_at]
FROM OPENJSON(?) WITH (
    [entity] NVARCHAR(900) '$[0]',
    [client_id] NVARCHAR(900) '$[1]',
    [stage] NVARCHAR(900) '$[2]',
    [bucket_start] DATETIME2(6) '$[3]',
    [comparisons] BIGINT '$[4]',
    [mismatches] BIGINT '$[5]',
    [mismatched_items] BIGINT '$[6]',
    [errors] BIGINT '$[7]'
) AS j) AS s
ON t.[entity] = s.[entity] AND t.[client_id] = s.[client_id] AND t.[stage] = s.[stage] AND t.[bucket_start] = s.[bucket_start]
WHEN MATCHED THEN
  UPDATE SET t.[comparisons] = t.[comparisons] + s.[comparisons], t.[mismatches] = t.[mismatches] + s.[mismatches], t.[mismatched_items] = t.[mismatched_items] + s.[mismatched_items], t.[errors] = t.[errors] + s.[errors], t.[updated_at] = s.[updated_at]
WHEN NOT MATCHED BY TARGET THEN
  INSERT ([entity], [client_id], [stage], [bucket_start], [comparisons], [mismatches], [mismatched_items], [errors], [updated_at]) VALUES (s.[entity], s.[client_id], s.[stage], s.[bucket_start], s.[comparisons], s.[mismatches], s.[mismatched_items], s.[errors], s.[updated_at]);
