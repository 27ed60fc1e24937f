//! Recoverable sessions (Socket.IO connection-state recovery): one row per session that
//! joined a room, keyed by a hash of its secret `pid`, holding its user and its rooms.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Sessions {
    Table,
    PidHash,
    UserId,
    State,
    UpdatedAt,
    DisconnectedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .if_not_exists()
                    // SHA-256 of the pid, hex: the pid itself is never stored.
                    .col(
                        ColumnDef::new(Sessions::PidHash)
                            .string_len(64)
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Sessions::UserId).string_len(255).not_null())
                    // The rooms, subscriptions and join positions, as JSON text.
                    .col(ColumnDef::new(Sessions::State).text().not_null())
                    // Milliseconds since the Unix epoch.
                    .col(ColumnDef::new(Sessions::UpdatedAt).big_integer().not_null())
                    // When its connection ended; NULL while connected.
                    .col(
                        ColumnDef::new(Sessions::DisconnectedAt)
                            .big_integer()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("sessions_disconnected_at")
                    .table(Sessions::Table)
                    .col(Sessions::DisconnectedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Sessions::Table).to_owned())
            .await
    }
}
