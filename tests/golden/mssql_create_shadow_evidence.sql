IF OBJECT_ID(N'cutover_shadow_evidence', N'U') IS NULL
CREATE TABLE [cutover_shadow_evidence] (
  [entity] NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [client_id] NVARCHAR(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [stage] NVARCHAR(16) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [bucket_start] DATETIME2(6) NOT NULL,
  [comparisons] BIGINT NOT NULL,
  [mismatches] BIGINT NOT NULL,
  [mismatched_items] BIGINT NOT NULL,
  [errors] BIGINT NOT NULL,
  [updated_at] DATETIME2(6) NOT NULL,
  PRIMARY KEY ([entity], [client_id], [stage], [bucket_start])
)
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'ix_cutover_shadow_evidence_time' AND object_id = OBJECT_ID(N'cutover_shadow_evidence'))
CREATE INDEX [ix_cutover_shadow_evidence_time] ON [cutover_shadow_evidence] ([bucket_start])
