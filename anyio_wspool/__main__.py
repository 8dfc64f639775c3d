from anyio_wspool._demo import main

main()
