//! Durability: the `epoch` of each stored event, room ownership leases (the fencing token
//! every write checks), persisted counters of events without history, and the quarantine
//! (dead-letter) table for rows the database refused.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Epoch,
}

#[derive(DeriveIden)]
enum RoomLeases {
    Table,
    RoomId,
    Owner,
    Node,
    LeaseUntil,
    Epoch,
}

#[derive(DeriveIden)]
enum EventCounters {
    Table,
    RoomId,
    EventName,
    HighWater,
}

#[derive(DeriveIden)]
enum Quarantine {
    Table,
    Id,
    RoomId,
    EventName,
    Seq,
    Epoch,
    Event,
    Error,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(
                        ColumnDef::new(Messages::Epoch)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RoomLeases::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(RoomLeases::RoomId)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    // The room instance holding the room (NULL = released cleanly).
                    .col(ColumnDef::new(RoomLeases::Owner).string_len(64).null())
                    // The process of that instance: "host|pid|token".
                    .col(ColumnDef::new(RoomLeases::Node).string_len(255).null())
                    // Milliseconds since the Unix epoch.
                    .col(
                        ColumnDef::new(RoomLeases::LeaseUntil)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RoomLeases::Epoch)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(EventCounters::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(EventCounters::RoomId)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EventCounters::EventName)
                            .string_len(100)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(EventCounters::HighWater)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(EventCounters::RoomId)
                            .col(EventCounters::EventName),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Quarantine::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(Quarantine::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    // Text columns without length limits, escaped: whatever was refused fits.
                    .col(ColumnDef::new(Quarantine::RoomId).text().not_null())
                    .col(ColumnDef::new(Quarantine::EventName).text().not_null())
                    .col(ColumnDef::new(Quarantine::Seq).big_integer().not_null())
                    .col(ColumnDef::new(Quarantine::Epoch).big_integer().not_null())
                    // The whole EventMessage as JSON text.
                    .col(ColumnDef::new(Quarantine::Event).text().not_null())
                    .col(ColumnDef::new(Quarantine::Error).text().not_null())
                    .col(
                        ColumnDef::new(Quarantine::CreatedAt)
                            .timestamp()
                            .default(Expr::current_timestamp()),
                    )
                    .to_owned(),
            )
            .await?;
        // One entry per event: a write retried after a failure does not quarantine it twice.
        manager
            .create_index(
                Index::create()
                    .name("idx_quarantine_event")
                    .table(Quarantine::Table)
                    .col(Quarantine::RoomId)
                    .col(Quarantine::EventName)
                    .col(Quarantine::Seq)
                    .col(Quarantine::Epoch)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Quarantine::Table.into_iden(),
            EventCounters::Table.into_iden(),
            RoomLeases::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(Messages::Epoch)
                    .to_owned(),
            )
            .await
    }
}
