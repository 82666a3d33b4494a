import { FileHelper } from '@start9labs/start-sdk'
import { sdk } from '../sdk'
import { paths } from '../utils'

/** Arbiter's SSH client key (PKCS#8 PEM, which asyncssh reads). */
export const sshPrivateKey = FileHelper.string({
  base: sdk.volumes.main,
  subpath: paths.sshKey,
})

/** Its public half, one `ssh-ed25519 ...` line for the hosts' authorized_keys. */
export const sshPublicKey = FileHelper.string({
  base: sdk.volumes.main,
  subpath: paths.sshPublicKey,
})

/** The GPU hosts' keys from the Configure form; nothing else is trusted. */
export const knownHosts = FileHelper.string({
  base: sdk.volumes.main,
  subpath: paths.knownHosts,
})
