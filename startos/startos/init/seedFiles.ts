import { generateKeyPairSync } from 'node:crypto'
import { utils } from '@start9labs/start-sdk'
import { knownHosts, sshPrivateKey, sshPublicKey } from '../fileModels/ssh'
import { storeJson } from '../fileModels/store.json'
import { sdk } from '../sdk'

/** An ed25519 key pair: PKCS#8 PEM (asyncssh reads it) and the OpenSSH public line. */
export function generateSshKey(comment: string): { privatePem: string; publicLine: string } {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519')
  const spki = publicKey.export({ type: 'spki', format: 'der' })
  const raw = spki.subarray(spki.length - 32) // the DER prefix is fixed; the key is last
  const field = (bytes: Buffer) => {
    const length = Buffer.alloc(4)
    length.writeUInt32BE(bytes.length)
    return Buffer.concat([length, bytes])
  }
  const blob = Buffer.concat([field(Buffer.from('ssh-ed25519')), field(raw)])
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicLine: `ssh-ed25519 ${blob.toString('base64')} ${comment}\n`,
  }
}

/**
 * Files Arbiter needs before its first start: the admin password, Arbiter's SSH key,
 * an (empty) known_hosts. Runs on every init and only fills in what is missing, so
 * a restore keeps the restored key and password.
 */
export const seedFiles = sdk.setupOnInit(async (effects) => {
  const store = await storeJson.read().once()
  if (!store?.adminPassword) {
    const adminPassword = utils.getDefaultString({
      charset: 'a-z,A-Z,0-9',
      len: 22,
    })
    await storeJson.write(effects, { ...(store ?? {}), adminPassword })
  }
  if (!(await sshPublicKey.read().once())) {
    const { privatePem, publicLine } = generateSshKey('arbiter@startos')
    await sshPrivateKey.write(effects, privatePem)
    await sshPublicKey.write(effects, publicLine)
  }
  if ((await knownHosts.read().once()) === null) {
    await knownHosts.write(effects, '')
  }
})
