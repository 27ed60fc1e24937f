//! Starting the service: the actors, the HTTP server on an already-bound listener, and
//! graceful shutdown.

use crate::actors::directory::Directory;
use crate::actors::persistence::Persistence;
use crate::config::Settings;
use crate::http::{self, AppState};
use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use std::net::TcpListener;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

fn threads(configured: usize) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured
    }
}

/// Runs the service on `listener` until SIGINT/SIGTERM. Call inside an actix `System`.
pub async fn run(settings: Settings, listener: TcpListener) -> std::io::Result<()> {
    let settings = Arc::new(settings);
    let server_cfg = &settings.config.server;

    let room_threads: Vec<Arbiter> = (0..threads(server_cfg.room_threads))
        .map(|_| Arbiter::new())
        .collect();
    let persistence = Persistence::start_link();
    let directory = Directory::new(
        settings.clone(),
        room_threads.iter().map(Arbiter::handle).collect(),
        persistence,
    )
    .start();

    let state = AppState {
        settings: settings.clone(),
        directory,
        next_conn: Arc::new(AtomicU64::new(1)),
    };
    let addr = listener.local_addr()?;
    let workers = threads(server_cfg.workers);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(state.clone()))
            .configure(http::configure)
    })
    .workers(workers)
    .listen(listener)?
    .run();
    log::info!(
        "dialogue listening on http://{addr} ({} rooms, {workers} workers, {} room threads)",
        settings.config.rooms.len(),
        room_threads.len()
    );
    server.await?;
    for arbiter in room_threads {
        arbiter.stop();
    }
    log::info!("dialogue stopped");
    Ok(())
}
