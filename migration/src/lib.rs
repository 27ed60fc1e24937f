//! Schema migrations of the Dialogue database. The service applies pending ones at start-up;
//! `cargo run -p migration -- up|down|status` runs them by hand (reads `DATABASE_URL`).

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_create_messages;
mod m20261127_000001_durability;
mod m20261127_000002_sessions;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_create_messages::Migration),
            Box::new(m20261127_000001_durability::Migration),
            Box::new(m20261127_000002_sessions::Migration),
        ]
    }
}
