IF OBJECT_ID(N'cutover_schema', N'U') IS NULL
CREATE TABLE [cutover_schema] (
  [table_name] NVARCHAR(128) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [version] BIGINT NOT NULL,
  [fingerprint] NVARCHAR(64) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [updated_at] DATETIME2(6) NOT NULL,
  PRIMARY KEY ([table_name])
)
