import type { HealthCheckResult } from '@start9labs/start-sdk/lib/health/checkFns'
import { storeJson } from './fileModels/store.json'
import { sdk } from './sdk'
import {
  adminUsername,
  arbiterUid,
  arbiterUser,
  assetsDir,
  dataDir,
  paths,
  python,
  redisPort,
  uiPort,
} from './utils'

/** Hosts and origins the UI is reached at, for ALLOWED_HOSTS and CSRF_TRUSTED_ORIGINS. */
function webOrigins(urls: string[]): { hosts: string[]; origins: string[] } {
  // The health check below and the processes themselves talk to 127.0.0.1.
  const hosts = new Set(['127.0.0.1', 'localhost'])
  const origins = new Set<string>()
  for (const url of urls) {
    const parsed = new URL(url)
    hosts.add(parsed.hostname)
    origins.add(parsed.origin)
  }
  return { hosts: [...hosts], origins: [...origins] }
}

/** `/healthz` answers 200 only when Arbiter serves and its database answers. */
async function checkHealthz(): Promise<HealthCheckResult> {
  try {
    const response = await fetch(`http://127.0.0.1:${uiPort}/healthz`, {
      signal: AbortSignal.timeout(5000),
    })
    if (response.ok) return { result: 'success', message: 'Arbiter is serving' }
    return { result: 'failure', message: `/healthz answered ${response.status}` }
  } catch {
    return { result: 'failure', message: 'Arbiter does not answer on /healthz' }
  }
}

export const main = sdk.setupMain(async ({ effects }) => {
  const store = await storeJson.read().const(effects)
  const configure = store?.configure
  if (!configure) {
    throw new Error('Arbiter has no GPU hosts yet: run the "Configure" action first.')
  }
  // Restarting on a new address keeps CSRF_TRUSTED_ORIGINS in step with it.
  const urls =
    (await sdk.host
      .getOwn(
        effects,
        'ui',
        (host) => host?.bindings[uiPort]?.interfaces['ui']?.addressInfo.format() ?? [],
      )
      .const()) ?? []
  const web = webOrigins(urls)

  // Arbiter's settings (arbiter/settings.py reads each of these).
  const arbiterEnv = {
    ARBITER_DATA_DIR: dataDir,
    ARBITER_CONFIG: `${dataDir}/${paths.cluster}`,
    REDIS_URL: `redis://127.0.0.1:${redisPort}/0`,
    ARBITER_PROCESS_COUNT: '2',
    ALLOWED_HOSTS: web.hosts.join(','),
    CSRF_TRUSTED_ORIGINS: web.origins.join(','),
    ARBITER_CONTAINER_NAME: configure.containerName,
  }
  // Inputs of assets/prepare.py only; never seen by the serving processes.
  const prepareEnv = {
    ...arbiterEnv,
    STARTOS_ADMIN_USERNAME: adminUsername,
    STARTOS_ADMIN_PASSWORD: store.adminPassword ?? '',
    STARTOS_WEBHOOK_URL: configure.webhookUrl ?? '',
    STARTOS_WEBHOOK_SECRET: configure.webhookSecret ?? '',
  }

  const arbiter = sdk.SubContainer.of(
    effects,
    { imageId: 'arbiter' },
    sdk.Mounts.of()
      .mountVolume({
        volumeId: 'main',
        subpath: null,
        mountpoint: dataDir,
        readonly: false,
      })
      .mountAssets({ subpath: null, mountpoint: assetsDir }),
    'arbiter',
  )
  const redis = sdk.SubContainer.of(effects, { imageId: 'redis' }, null, 'redis')

  return sdk.Daemons.of(effects)
    .addOneshot('chown', {
      // Volumes are mounted root-owned; Arbiter runs as its own user.
      subcontainer: arbiter,
      exec: {
        command: ['chown', '-R', `${arbiterUid}:${arbiterUid}`, dataDir],
        user: 'root',
      },
      requires: [],
    })
    .addOneshot('migrate', {
      subcontainer: arbiter,
      exec: {
        command: [python, 'manage.py', 'migrate', '--noinput'],
        env: arbiterEnv,
        cwd: '/app',
        user: arbiterUser,
      },
      requires: ['chown'],
    })
    .addOneshot('prepare', {
      subcontainer: arbiter,
      exec: {
        command: [python, `${assetsDir}/prepare.py`],
        env: prepareEnv,
        cwd: '/app',
        user: arbiterUser,
      },
      requires: ['migrate'],
    })
    .addDaemon('redis', {
      subcontainer: redis,
      exec: {
        // Only a channel layer and a queue: nothing in it must survive a restart.
        command: [
          'redis-server',
          '--bind',
          '127.0.0.1',
          '--port',
          String(redisPort),
          '--save',
          '',
          '--appendonly',
          'no',
        ],
        user: 'redis',
      },
      ready: {
        display: null,
        fn: () =>
          sdk.healthCheck.checkPortListening(effects, redisPort, {
            successMessage: 'Redis is ready',
            errorMessage: 'Redis is not listening',
          }),
      },
      requires: [],
    })
    .addDaemon('web', {
      subcontainer: arbiter,
      exec: {
        // daphne with the engine loops; the huey worker runs as its own daemon below.
        command: [
          python,
          'manage.py',
          'serve',
          '--no-huey',
          '--host',
          '0.0.0.0',
          '--port',
          String(uiPort),
        ],
        env: arbiterEnv,
        cwd: '/app',
        user: arbiterUser,
      },
      ready: {
        display: 'Web interface',
        gracePeriod: 60_000,
        fn: checkHealthz,
      },
      requires: ['prepare', 'redis'],
    })
    .addDaemon('huey', {
      subcontainer: arbiter,
      exec: {
        command: [python, 'manage.py', 'run_huey'],
        env: arbiterEnv,
        cwd: '/app',
        user: arbiterUser,
      },
      ready: {
        display: 'Task queue',
        // The worker has no port; it is healthy while it runs (StartOS restarts it).
        fn: () => ({ result: 'success', message: 'The task worker is running' }),
      },
      requires: ['migrate', 'redis'],
    })
})
