MERGE INTO [orders] WITH (HOLDLOCK) AS t
USING (SELECT j.[id], j.[client_id], j.[version], j.[_deleted], CAST(? AS DATETIME2(6)) AS [_updated_at], j.[status], j.[amount], j.[quantity], j.[paid], j.[placed_at], j.[meta]
FROM OPENJSON(?) WITH (
    [id] NVARCHAR(900) '$[0]',
    [client_id] NVARCHAR(900) '$[1]',
    [version] BIGINT '$[2]',
    [_deleted] BIT '$[3]',
    [status] NVARCHAR(MAX) '$[4]',
    [amount] FLOAT '$[5]',
    [quantity] BIGINT '$[6]',
    [paid] BIT '$[7]',
    [placed_at] DATETIME2(6) '$[8]',
    [meta] NVARCHAR(MAX) '$[9]'
) AS j) AS s
ON t.[id] = s.[id]
WHEN MATCHED AND (t.[version] < s.[version] OR (t.[version] = s.[version] AND t.[_deleted] < s.[_deleted])) THEN
  UPDATE SET t.[client_id] = s.[client_id], t.[version] = s.[version], t.[_deleted] = s.[_deleted], t.[_updated_at] = s.[_updated_at], t.[status] = s.[status], t.[amount] = s.[amount], t.[quantity] = s.[quantity], t.[paid] = s.[paid], t.[placed_at] = s.[placed_at], t.[meta] = s.[meta]
WHEN NOT MATCHED BY TARGET THEN
  INSERT ([id], [client_id], [version], [_deleted], [_updated_at], [status], [amount], [quantity], [paid], [placed_at], [meta]) VALUES (s.[id], s.[client_id], s.[version], s.[_deleted], s.[_updated_at], s.[status], s.[amount], s.[quantity], s.[paid], s.[placed_at], s.[meta]);
