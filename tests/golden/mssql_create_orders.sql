IF OBJECT_ID(N'orders', N'U') IS NULL
CREATE TABLE [orders] (
  [id] NVARCHAR(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [client_id] NVARCHAR(255) COLLATE Latin1_General_100_BIN2 NOT NULL,
  [version] BIGINT NOT NULL,
  [_deleted] BIT NOT NULL,
  [_updated_at] DATETIME2(6) NOT NULL,
  [status] NVARCHAR(32) NULL,
  [amount] FLOAT NULL,
  [quantity] BIGINT NULL,
  [paid] BIT NULL,
  [placed_at] DATETIME2(6) NULL,
  [meta] NVARCHAR(MAX) NULL,
  PRIMARY KEY ([id])
)
GO
IF NOT EXISTS (SELECT 1 FROM sys.indexes WHERE name = N'ix_orders_client_key' AND object_id = OBJECT_ID(N'orders'))
CREATE INDEX [ix_orders_client_key] ON [orders] ([client_id], [id])
