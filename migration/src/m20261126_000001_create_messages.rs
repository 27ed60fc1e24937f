//! The `messages` table (the seed's, plus `seq` and `meta`) and its unique
//! `(room_id, event_name, seq)` index.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    RoomId,
    EventName,
    EventData,
    FromUser,
    Timestamp,
    CreatedAt,
    Seq,
    Meta,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Messages::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Messages::RoomId).string_len(255).not_null())
                    .col(
                        ColumnDef::new(Messages::EventName)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Messages::EventData).json_binary().not_null())
                    .col(
                        ColumnDef::new(Messages::FromUser)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(ColumnDef::new(Messages::Timestamp).big_integer().not_null())
                    .col(
                        ColumnDef::new(Messages::CreatedAt)
                            .timestamp()
                            .default(Expr::current_timestamp()),
                    )
                    .col(ColumnDef::new(Messages::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Messages::Meta).json_binary().null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_messages_room_event_seq")
                    .table(Messages::Table)
                    .col(Messages::RoomId)
                    .col(Messages::EventName)
                    .col(Messages::Seq)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Messages::Table).to_owned())
            .await
    }
}
