/**
 * Constants shared by the package's modules. Ports and paths live here once, so
 * the daemon command, its health check and the exported interface cannot drift
 * apart (tests/ship checks them against each other and the Dockerfile).
 */

/** The project's public repository; the one place the package names it. */
export const projectUrl = 'https://github.com/arbiter-gpu/arbiter'

/** The port Arbiter (daphne) serves HTTP and WebSockets on inside the container. */
export const uiPort = 8000

/** Redis, private to the package: channels_redis and RedisHuey share it. */
export const redisPort = 6379

/** Where the `main` volume is mounted: Arbiter's ARBITER_DATA_DIR. */
export const dataDir = '/data'

/** Where the package's assets (the `assets/` folder) are mounted. */
export const assetsDir = '/assets'

/** The non-root user of the Arbiter image (startos/Dockerfile). */
export const arbiterUser = 'arbiter'
export const arbiterUid = 1000

/** Paths inside the `main` volume. */
export const paths = {
  /** The cluster inventory the Configure action writes (ARBITER_CONFIG). */
  cluster: 'cluster.yaml',
  /** Arbiter's SSH client key; its public half is shown by an action. */
  sshKey: 'ssh/id_ed25519',
  sshPublicKey: 'ssh/id_ed25519.pub',
  /** Host keys entered in the Configure form (strict checking, never learned). */
  knownHosts: 'ssh/known_hosts',
  /** SQLite database and the consistent copy a backup takes of it. */
  database: 'arbiter.sqlite3',
  databaseSnapshot: 'backup/arbiter.sqlite3',
} as const

/** Arbiter's first user, created by `assets/prepare.py setup`. */
export const adminUsername = 'admin'

/** The Python of the image's virtualenv (startos/Dockerfile). */
export const python = '/opt/venv/bin/python'
